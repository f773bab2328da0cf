from xclr_prep.cli import main

main()

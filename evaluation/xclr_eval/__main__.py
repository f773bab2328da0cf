from xclr_eval.cli import main

main()

from xclr_train.cli import main

main()

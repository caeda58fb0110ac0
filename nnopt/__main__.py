from nnopt.cli import main

main()

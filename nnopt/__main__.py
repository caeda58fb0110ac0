from nnopt.cli import entry

entry()

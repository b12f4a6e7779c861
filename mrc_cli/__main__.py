from mrc_cli.cli import main

main()

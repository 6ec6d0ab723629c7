from yayi_cli.cli import main

main()

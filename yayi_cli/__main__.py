from yayi_cli.cli.app import main


main()

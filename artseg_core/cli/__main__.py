from artseg_core.cli.main import main

main()

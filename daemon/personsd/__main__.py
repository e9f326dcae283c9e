from personsd.cli import main

main()

from ftpatch.cli import main

main()

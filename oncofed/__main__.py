from oncofed.cli import main

main()

from oncofed.client.cli import main

main()

"""`python -m importer` is the same program as `consent-import`."""

from importer.cli import main

if __name__ == "__main__":
    main()

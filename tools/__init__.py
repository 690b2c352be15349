"""Command-line tools beside the library: the downloader, the data verifier and the NPR-mini builder.

    python -m tools.download --list
    python -m tools.verify --dataroot ./datasets
    python -m tools.mini --rebuild
"""

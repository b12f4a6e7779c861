"""mrc-cli: fine-tune ALBERT/BERT-family encoders for extractive reading comprehension."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from mrc_cli import Reader` without importing torch for every CLI start
    if name == "Reader":
        from mrc_cli.reader import Reader

        return Reader
    raise AttributeError(name)

"""mrc-cli: fine-tune ALBERT/BERT-family encoders for extractive reading comprehension."""

__version__ = "0.1.0"

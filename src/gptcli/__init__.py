"""gptcli: train, fine-tune, sample from, chat with and measure small GPTs with one command."""

__version__ = "0.1.0"

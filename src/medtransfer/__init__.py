"""medtransfer: which pre-training, and which way of fine-tuning it, serves a medical-imaging task with few labels."""

__version__ = "0.1.0"

"""What every part of ddgan runs on: atomic files, the Hugging Face Hub, mixed precision, torch.distributed."""

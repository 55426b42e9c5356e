"""hpsearch worker: pulls trials from the server over HTTP and fine-tunes pretrained models."""

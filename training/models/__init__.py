"""Layers and architectures. Each module holds one architecture (a frozen config dataclass and the
nn.Module built from it); `training.registry` lists them all with the input each expects."""

"""Task plug-ins of the training framework: each module brings its model builder, data, loss and metrics."""

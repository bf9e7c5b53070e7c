"""What the model reads: model inputs, the frozen-tower engine, augmentation."""

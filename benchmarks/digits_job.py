"""The job every benchmark here times: an MLP 64-256-128-10 (ReLU) on digits, SGD with
momentum, batch 64, as an nnopt pipeline (the plain PyTorch side writes the same by hand)."""

PIPELINE = """\
name: {name}
seed: 0
device: cpu
data: {{name: digits, batch_size: 64}}
model:
  arch: {{name: mlp, widths: [256, 128], activation: relu}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}
    epochs: {epochs}
"""

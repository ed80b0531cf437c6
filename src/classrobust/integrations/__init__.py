"""Class-wise robustness inside other people's training code: a torchmetrics metric, a PyTorch
Lightning callback and TensorBoard logging. Each needs its optional extra
(``pip install classrobust[integrations]``); importing this package needs none of them."""

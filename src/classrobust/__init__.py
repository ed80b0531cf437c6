"""classrobust: class-wise robustness in adversarial training.

After Tian et al., "Analysis and Applications of Class-wise Robustness in
Adversarial Training", KDD 2021 (arXiv:2105.14240).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""The linearized network and its training dynamics: closed-form predictions from kernels.

- `linearize(model)` / `taylor_expand(model, degree)`: the network's first (second) order Taylor
  expansion in its parameters, a trainable `nn.Module` (also `ntkit.linearize`).
- `gradient_descent_mse(k_train_train, y_train, lr=None, ridge=0)`: train and test outputs of
  gradient descent on MSE at any time t with a fixed kernel (the eNTK at initialization for the
  linearized network); t = inf is kernel ridge regression.
- `gp_inference(...)`: the GP posterior mean and covariance (NNGP or NTK);
  `gradient_descent_mse_ensemble(...)`: mean and covariance over initializations at time t.
- `nngp(model, x1, x2=None, ...)`: the empirical NNGP (also `ntkit.nngp`).

Papers: Jacot, Gabriel & Hongler 2018, "Neural Tangent Kernel: Convergence and Generalization in
Neural Networks" (the NTK and the function-space flow); Lee et al. 2019, "Wide Neural Networks of
Any Depth Evolve as Linear Models Under Gradient Descent" (linearization, the closed forms and the
ensemble); Lee et al. 2018, "Deep Neural Networks as Gaussian Processes" (the NNGP). The API follows
neural-tangents' `nt.predict` (Novak et al. 2020), and its loss convention: ½ mean squared error.

>>> import torch
>>> from ntkit.predict import gradient_descent_mse
>>> K = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
>>> predict = gradient_descent_mse(K, torch.tensor([1.0, -1.0], dtype=torch.float64))
>>> predict(t=float("inf")).train.tolist()  # at t = inf the training targets are fitted
[1.0, -1.0]
"""

from ntkit.predict.arrays import PredictInputError
from ntkit.predict.gp import EnsemblePredictor, Gaussian, gp_inference, gradient_descent_mse_ensemble
from ntkit.predict.linearized import Linearized, linearize, taylor_expand
from ntkit.predict.mse import GradientDescentMSE, Prediction, gradient_descent_mse, mse_loss
from ntkit.predict.nngp import nngp

__all__ = ["linearize", "taylor_expand", "Linearized", "gradient_descent_mse", "GradientDescentMSE", "Prediction",
           "mse_loss", "gp_inference", "gradient_descent_mse_ensemble", "EnsemblePredictor", "Gaussian", "nngp",
           "PredictInputError"]

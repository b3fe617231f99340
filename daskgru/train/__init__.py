"""Training: gradients by backpropagation through time (:mod:`.backward`) and the
scikit-learn-style estimator (:mod:`.regressor`)."""
from .backward import backward, gru_backward, lstm_backward
from .regressor import Adam, GRURegressor, NotFittedError

__all__ = ["backward", "gru_backward", "lstm_backward", "Adam", "GRURegressor",
           "NotFittedError"]

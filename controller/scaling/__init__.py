"""T² scaling curves: estimators, Beta difficulty fits, loss/accuracy laws, fitting and planning."""

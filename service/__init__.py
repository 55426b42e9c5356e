"""hpsearch study service: a REST API over Optuna studies, and the trial protocol that workers
pull from."""

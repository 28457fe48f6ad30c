"""Problems the estimators are measured on. Problems know nothing of estimators."""

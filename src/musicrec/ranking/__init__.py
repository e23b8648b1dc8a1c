"""The ranking stage: features over merged candidates, a CatBoost ranker, the final lists."""

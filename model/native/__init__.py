"""The model's one door below a library's public API: LightGBM's single-row predictor
(`lightgbm_row`), under the rule of `core.native`."""

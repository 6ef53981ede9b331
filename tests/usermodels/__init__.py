"""Models of a user's own, for the bring-your-own-model tests: ``tests.usermodels.nets:resnet``."""

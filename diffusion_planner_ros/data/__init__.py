"""Datasets: Minari collection and loading, sequence windows, normalisation."""

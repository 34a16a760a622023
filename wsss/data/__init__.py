"""Datasets: the synthetic benchmark generator and the VOC-layout reader they all share."""

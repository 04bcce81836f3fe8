"""Weak supervision: saliency maps (Score-CAM) and their refinement into pseudo-masks."""

"""What runs inside Ray: the session actor, its children, the detector and the tools they use."""

"""YOLO object detection as a Ray Serve deployment: `replica` (the model behind a batcher, on
the device Ray assigned), `draw` (boxes and labels on the replica's device) and `client`
(deploying it, once per cluster, and calling it from sessions)."""

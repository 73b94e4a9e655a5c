"""The ``vggdeploy train`` stage: what to train where (the request), the recipe sized to the data, the loop, its
schedule, checkpoints and signals."""

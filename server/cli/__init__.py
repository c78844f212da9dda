"""The llamaserve command: flags -> settings -> checks -> serve; -p one-shot mode."""

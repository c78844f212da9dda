"""The scheduler (admission, queue, slots, cancellation, the step loop) and incremental text streams."""

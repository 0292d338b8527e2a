"""foveated-vlm: a video-language model that reads one token per frame and learns where to look."""

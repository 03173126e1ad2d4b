"""The Gradio demo (issue 5): upload footage and audio, train, synthesize, compare with baselines."""

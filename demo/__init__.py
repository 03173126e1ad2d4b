"""The Gradio demo: upload footage and audio, train, synthesize, compare with baselines."""

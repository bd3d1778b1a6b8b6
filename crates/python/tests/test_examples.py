"""The reference library's README examples ("Creating a New Index", then "Quick Start"), with
only their import lines changed (`sentinel` -> `vigil_sentinel`; the unused `import torch`
dropped). They run as written: relative paths in a temporary directory, and the S3 parts
against a local S3-compatible server (which accepts the placeholder keys)."""

import os
import subprocess
import sys
import textwrap

CREATING_A_NEW_INDEX = '''
from vigil_sentinel.sentinel_local_index import SentinelLocalIndex
from vigil_sentinel.embeddings.sbert import get_sentence_transformer_and_scaling_fn

# Initialize sentence model and get scaling function
model_name = "all-MiniLM-L6-v2"
model, scale_fn = get_sentence_transformer_and_scaling_fn(model_name)

# Prepare examples
positive_examples = ["positive message 1", "rare class example", "critical content example"]
negative_examples = ["neutral message 1", "common class example", "typical content"]

# Encode examples
positive_embeddings = model.encode(positive_examples, normalize_embeddings=True)
negative_embeddings = model.encode(negative_examples, normalize_embeddings=True)

# Create the index
index = SentinelLocalIndex(
    sentence_model=model,
    positive_embeddings=positive_embeddings,
    negative_embeddings=negative_embeddings,
    scale_fn=scale_fn,
    positive_corpus=positive_examples,
    negative_corpus=negative_examples,
)

# Save locally - provide the model name when saving
saved_config = index.save(path="path/to/local/index", encoder_model_name_or_path=model_name)
print(f"Saved index with encoder model: {saved_config.encoder_model_name_or_path}")

# Or save to S3
saved_config = index.save(
    path="s3://my-bucket/path/to/index",
    encoder_model_name_or_path=model_name,
    aws_access_key_id="YOUR_ACCESS_KEY_ID",  # Optional if using environment credentials
    aws_secret_access_key="YOUR_SECRET_ACCESS_KEY"  # Optional if using environment credentials
)
'''

QUICK_START = '''
from vigil_sentinel.sentinel_local_index import SentinelLocalIndex

# Load a previously saved index from a local path
index = SentinelLocalIndex.load(path="path/to/local/index")

# Or load from S3
index = SentinelLocalIndex.load(
    path="s3://my-bucket/path/to/index",
    aws_access_key_id="YOUR_ACCESS_KEY_ID",  # Optional if using environment credentials
    aws_secret_access_key="YOUR_SECRET_ACCESS_KEY"  # Optional if using environment credentials
)

# Collect recent observations from a single source (e.g., recent messages from a user)
user_recent_messages = [
    "Hey how are you?",
    "What are you doing today?",
    "Do you have any pictures you can share?",
    "Where do you live?",
    "Are your parents home right now?"
]

# Calculate rare class affinity across all observations
result = index.calculate_rare_class_affinity(user_recent_messages)

# Get the overall score (uses skewness by default)
overall_score = result.rare_class_affinity_score
print(f"Overall rare class affinity score: {overall_score:.4f}")

# Examine individual observation scores
for message, score in result.observation_scores.items():
    risk_level = "High" if score > 0.5 else "Medium" if score > 0.1 else "Low"
    print(f"'{message}' - Score: {score:.4f} - Risk: {risk_level}")
'''


def run(script, cwd):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd,
                         capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_readme_examples_run_with_only_the_imports_changed(tmp_path, moto, model_dir):
    created = run(CREATING_A_NEW_INDEX, tmp_path)
    assert "Saved index with encoder model: all-MiniLM-L6-v2" in created
    saved = tmp_path / "path" / "to" / "local" / "index"
    assert sorted(p.name for p in saved.iterdir()) == [
        "corpus.json", "embeddings.safetensors", "sentinel_local_index_config.json"]
    quick = run(QUICK_START, tmp_path)
    lines = quick.strip().splitlines()
    assert lines[0].startswith("Overall rare class affinity score: ")
    # five distinct messages, each with a score and a risk level
    assert len(lines) == 6
    assert all(" - Score: " in line and " - Risk: " in line for line in lines[1:])
    # fewer than ten messages: skewness is 0 by definition
    assert lines[0].endswith("0.0000")

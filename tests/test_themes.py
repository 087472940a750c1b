import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from topic_fixtures import TOPIC_WORDS, add_feed, add_post

from kb import theme_scores, themes
from kb.cli import cli
from kb.db import open_db
from kb.errors import ConfigError

THEMES_YAML = """\
themes:
  - name: Container orchestration
    description: Kubernetes pods, the scheduler and cluster autoscaling.
  - name: Database internals
    description: Postgres vacuum, index and replication internals and the query planner.
    keywords: [postgres, vacuum]
"""


def write(tmp_path, text: str, name: str = "themes.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# Loading themes files


def test_load_themes_reads_entries(tmp_path):
    loaded = themes.load_themes(write(tmp_path, THEMES_YAML))
    assert [theme.name for theme in loaded] == [
        "Container orchestration",
        "Database internals",
    ]
    assert loaded[1].keywords == ["postgres", "vacuum"]
    assert loaded[0].query.startswith("Container orchestration. Kubernetes")


def test_default_themes_file_is_valid():
    loaded = themes.load_themes(themes.DEFAULT_THEMES)
    assert 12 <= len(loaded) <= 20
    for theme in loaded:
        assert len(theme.description.split()) >= 8
        assert theme.description.endswith(".")


def test_load_themes_accepts_bare_list(tmp_path):
    path = write(tmp_path, "- name: A\n  description: About a.\n")
    assert themes.load_themes(path)[0].description == "About a."


@pytest.mark.parametrize(
    "text, message",
    [
        ("themes: [name: a\n", "Invalid YAML"),  # unclosed flow sequence
        ("", "has no themes"),  # empty file
        ("themes: []\n", "has no themes"),
        ("themes:\n  - just a string\n", "Theme #1 .* not a mapping"),
        ("themes:\n  - description: no name\n", "Theme #1 .* has no name"),
        (
            "themes:\n  - name: A\n    description: a.\n  - name: B\n",
            r"Theme #2 \('B'\) .* has no description",
        ),
        ("themes:\n  - name: A\n    description: '  '\n", "has no description"),
        (
            "themes:\n  - name: A\n    description: a.\n    keywords: x\n",
            "keywords must be a list",
        ),
        (
            "themes:\n  - {name: A, description: a.}\n  - {name: A, description: b.}\n",
            "more than once: A",
        ),
    ],
)
def test_load_themes_rejects_bad_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as raised:
        themes.load_themes(path)
    assert str(path) in str(raised.value)


def test_load_themes_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read themes file"):
        themes.load_themes(tmp_path / "absent.yml")


# Scoring helpers


def test_select_members_cut_follows_best_posts():
    scores = np.linspace(-1.0, 1.0, 500)
    scores[:10] = 6.0  # the best posts: the cut is 0.44 * 6.0 = 2.64
    scores[[100, 200]] = [3.0, 2.5]
    rows, threshold = theme_scores.select_members(scores)
    assert threshold == pytest.approx(theme_scores.MEMBER_SHARE * 6.0)
    assert sorted(rows.tolist()) == [*range(10), 100]
    assert rows[-1] == 100


def test_select_members_cut_has_floor():
    scores = np.linspace(-1.0, 1.0, 500)
    scores[[7, 99]] = [2.5, 1.9]
    rows, threshold = theme_scores.select_members(scores)
    assert threshold == theme_scores.MIN_MEMBER_Z
    assert rows.tolist() == [7]


def test_select_members_empty():
    rows, _ = theme_scores.select_members(np.zeros(0))
    assert len(rows) == 0


def test_standardise_constant_column_is_zero():
    scores = np.array([[1.0, 0.5], [3.0, 0.5]])
    standardised = theme_scores.standardise(scores)
    assert standardised[:, 0].tolist() == [-1.0, 1.0]
    assert standardised[:, 1].tolist() == [0.0, 0.0]


def test_lexical_scores_prefer_rare_theme_words():
    documents = [
        "Our outage postmortem",
        "Postmortem of the outage",
        "Hiring update",
        "Hiring and culture",
    ]
    theme = themes.Theme("Outages", "Incident postmortems.")
    scores = theme_scores.lexical_scores(documents, [theme])[:, 0]
    assert scores[0] > 0
    assert scores[1] > 0
    assert scores[2] == 0
    assert scores[3] == 0


@pytest.mark.parametrize(
    "title",
    [
        "Pop Song Generators, 3D Mesh Generators, Real-World Benchmarks",
        "Bengio Speaks; LAION Tests Copyright Law; Abu Dhabi Develops Top Model",
        "The Batch: Predicting Violence, DeepNude, Preparing For Robots, Medical AI",
    ],
)
def test_is_digest_headline_lists(title):
    assert theme_scores.is_digest(title)


@pytest.mark.parametrize(
    "title",
    [
        "Reproducible, Verifiable, Verified Builds",
        "Shutdowns, power outages, and conflict: a review of Q1 2026",
        "Building an open Agentic Internet: readable, discoverable, and payable",
        "Core dump epidemiology: fixing an 18-year-old bug",
        "",
        None,
    ],
)
def test_is_digest_ordinary_titles(title):
    assert not theme_scores.is_digest(title)


def test_lexical_document_of_digest_drops_title():
    title = "Robots Learn, Chips Shrink, Models Talk"
    assert theme_scores.lexical_document(title, "Editorial on evals.") == (
        "Editorial on evals."
    )
    assert theme_scores.lexical_document("Evals at scale", "Body") == (
        "Evals at scale\nEvals at scale\nBody"
    )
    assert theme_scores.lexical_document(None, None) == "\n\n"


def test_best_rows_per_column():
    scores = np.array([[0.1, 9.0], [5.0, 0.2], [4.0, 8.0], [0.0, 0.0]])
    best = theme_scores.best_rows(scores, 2)
    assert sorted(best[:, 0].tolist()) == [1, 2]
    assert sorted(best[:, 1].tolist()) == [0, 2]
    assert theme_scores.best_rows(scores, 10).shape == (4, 2)


def test_vector_feedback_moves_towards_best_posts():
    vectors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    corpus = theme_scores.Corpus(np.arange(3), vectors, vectors, ["", "", ""], "m")
    query = np.array([[1.0, 0.0, 0.0]])
    moved = theme_scores.vector_feedback(corpus, query, np.array([[1]]))
    assert np.linalg.norm(moved[0]) == pytest.approx(1.0)
    assert moved[0] @ vectors[1] > query[0] @ vectors[1]
    assert moved[0] @ vectors[2] == 0


def test_lexical_feedback_adds_best_post_words():
    documents = [
        "outage postmortem of the router",
        "outage postmortem of the router fleet",
        "hiring update",
        "hiring culture",
    ]
    index = theme_scores.lexical_index(documents)
    query = index.queries(["outage"])
    moved = theme_scores.lexical_feedback(index.matrix, query, np.array([[0]]))
    before = index.scores(query, 4, 1)[:, 0]
    after = index.scores(moved, 4, 1)[:, 0]
    router = index.vectorizer.vocabulary_["router"]
    assert query[0, router] == 0
    assert moved[0, router] > 0
    assert after[1] > before[1]
    assert after[2] == 0


def test_lexical_scores_single_document():
    scores = theme_scores.lexical_scores(["alone"], [themes.Theme("A", "a.")])
    assert scores.tolist() == [[0.0]]


@pytest.mark.parametrize(
    "word, stemmed",
    [
        ("benchmarking", "benchmark"),
        ("benchmarks", "benchmark"),
        ("outages", "outag"),
        ("models", "model"),
        ("ai", "ai"),  # too short to cut
        ("evaluations", "evalu"),
        ("evaluating", "evalu"),
        ("outage", "outag"),
        ("rating", "rating"),  # no cut leaves 4 letters
    ],
)
def test_stem(word, stemmed):
    assert theme_scores.stem(word) == stemmed


def test_stemmed_words_drop_stop_words():
    assert theme_scores.stemmed_words("The outages of On-Device models") == [
        "outag",
        "on-devic",
        "model",
    ]


# Assigning themes in a database


FILLER_WORDS = (
    "team hiring culture office remote meeting planning roadmap quarter launch "
    "customer story interview design review career mentoring conference talk "
    "podcast newsletter recap holiday"
).split()
MODEL = "hash:256"
# Members of a theme are rare in a real corpus (1 to 3% of posts for the
# labelled themes), and the member cut assumes so.
SUBJECT_POSTS = 6
FILLER_POSTS = 150
TOTAL_POSTS = 3 * SUBJECT_POSTS + FILLER_POSTS


def embedded_db(db_file):
    """A database of 6 posts on each of three subjects among 150 unrelated posts.

    Posts are embedded with the hash model, so a theme matches the posts that
    share its description's words.
    """
    from kb.embed import embed_posts

    db = open_db(db_file)
    feed = add_feed(db, "example", "Example")
    other = add_feed(db, "other", "Other Co")
    for subject in ["kubernetes", "postgres", "rust"]:
        words = TOPIC_WORDS[subject].split()
        for index in range(SUBJECT_POSTS):
            shifted = words[index % len(words) :] + words[: index % len(words)]
            add_post(
                db,
                feed if index % 2 else other,
                f"https://blog.example/{subject}/{index}",
                f"{subject} {shifted[0]}",
                f"{' '.join(shifted[:3])} notes from the team number {index}",
            )
    rng = np.random.default_rng(0)
    for index in range(FILLER_POSTS):
        words = rng.choice(FILLER_WORDS, size=8, replace=False)
        add_post(
            db,
            feed,
            f"https://blog.example/filler/{index}",
            " ".join(words[:3]),
            " ".join(words[3:]),
        )
    embed_posts(db, MODEL)
    return db


def theme_urls(db) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {}
    for row in db.query(
        "SELECT pt.theme, p.url FROM post_themes pt JOIN posts p ON p.id = pt.post_id"
    ):
        members.setdefault(row["theme"], set()).add(row["url"])
    return members


def test_assign_themes_finds_subject_posts(db_file, tmp_path):
    db = embedded_db(db_file)
    report = themes.assign_themes(db, write(tmp_path, THEMES_YAML), MODEL)
    assert report.themes == 2
    assert report.posts == TOTAL_POSTS
    members = theme_urls(db)
    for theme, subject in [
        ("Container orchestration", "kubernetes"),
        ("Database internals", "postgres"),
    ]:
        urls = members[theme]
        precision = sum(f"/{subject}/" in url for url in urls) / len(urls)
        recall = sum(f"/{subject}/" in url for url in urls) / SUBJECT_POSTS
        assert precision >= 0.9
        assert recall >= 0.7
    rust = {url for urls in members.values() for url in urls if "/rust/" in url}
    assert rust == set()


def test_assign_themes_replaces_previous_themes(db_file, tmp_path):
    db = embedded_db(db_file)
    themes.assign_themes(db, write(tmp_path, THEMES_YAML), MODEL)
    other = write(
        tmp_path,
        "themes:\n  - name: Memory safety\n"
        "    description: Rust ownership, the borrow checker and memory safety.\n",
        "other.yml",
    )
    themes.assign_themes(db, other, MODEL)
    assert [row["name"] for row in db.query("SELECT name FROM themes")] == [
        "Memory safety"
    ]
    assert set(theme_urls(db)) == {"Memory safety"}
    stored = db["themes"].get("Memory safety")
    assert stored["source"] == str(other)
    assert stored["posts"] == len(theme_urls(db)["Memory safety"])


def test_assign_themes_without_vectors(fresh_db, tmp_path):
    report = themes.assign_themes(fresh_db, write(tmp_path, THEMES_YAML))
    assert report.posts == 0
    assert "run 'kb ingest'" in report.message
    assert fresh_db["themes"].count == 2


def test_weekly_counts_themes(db_file, tmp_path):
    db = embedded_db(db_file)
    themes.assign_themes(db, write(tmp_path, THEMES_YAML), MODEL)
    rows = list(db.query("SELECT * FROM weekly WHERE kind = 'theme'"))
    assert {row["company"] for row in rows} == {"Example", "Other Co"}
    assert {row["week"] for row in rows} == {"2026-W10"}
    assert sum(row["posts"] for row in rows) == db["post_themes"].count


# The kb topics command


def test_cli_topics_themes_json(db_file, tmp_path):
    embedded_db(db_file).close()
    path = write(tmp_path, THEMES_YAML)
    result = CliRunner().invoke(
        cli, ["topics", "-d", str(db_file), "--themes", str(path), "--json"]
    )
    assert result.exit_code == 0, result.output
    overview = json.loads(result.stdout)
    assert [theme["name"] for theme in overview["themes"]] == [
        "Container orchestration",
        "Database internals",
    ]
    assert overview["posts"] == TOTAL_POSTS
    assert len(overview["topics"]) >= 2
    assert all(topic["size"] > 0 for topic in overview["topics"])


def test_cli_topics_table(db_file):
    embedded_db(db_file).close()
    result = CliRunner().invoke(cli, ["topics", "-d", str(db_file)])
    assert result.exit_code == 0, result.output
    assert "posts unassigned" in result.stdout
    assert "Reliability and incident postmortems" in result.stdout
    refit = CliRunner().invoke(cli, ["topics", "-d", str(db_file), "--refit"])
    assert refit.exit_code == 0, refit.output
    assert "Topics: fit" in refit.stderr


def test_cli_topics_bad_yaml_exits_1(db_file, tmp_path):
    embedded_db(db_file).close()
    path = write(tmp_path, "themes:\n  - name: Only a name\n")
    result = CliRunner().invoke(
        cli, ["topics", "-d", str(db_file), "--themes", str(path)]
    )
    assert result.exit_code == 1
    assert "'Only a name'" in result.output
    assert str(path) in result.output


def test_cli_topics_missing_db(tmp_path):
    result = CliRunner().invoke(cli, ["topics", "-d", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert "Database not found" in result.output


# Leave-one-theme-out check of the benchmark script


def load_themes_quality():
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "themes_quality.py"
    spec = importlib.util.spec_from_file_location("themes_quality", script)
    themes_quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(themes_quality)
    return themes_quality


def test_cut_mask_rules():
    themes_quality = load_themes_quality()
    scores = np.array([10.0] + [5.0] * 9 + [3.0, 2.0, 0.0])
    # The mean of the 10 best scores is 5.5.
    assert themes_quality.cut_mask(scores, "z", 3.0).sum() == 11
    assert themes_quality.cut_mask(scores, "best 10 share", 0.5).sum() == 11
    assert themes_quality.cut_mask(scores, "best share", 0.3).sum() == 11
    assert themes_quality.cut_mask(scores, "best share", 0.6).sum() == 1


def test_leave_one_theme_out_holds_out_each_theme():
    themes_quality = load_themes_quality()
    scores = np.zeros((20, 3))
    labels = np.zeros((20, 3), dtype=bool)
    # Themes 0 and 1: four members at 4.0 and two other posts at 2.5, so
    # only a z cut of 2.6 or more gives precision and recall 1.
    for column in (0, 1):
        scores[:4, column] = 4.0
        scores[4:6, column] = 2.5
        labels[:4, column] = True
    # Theme 2: members at 3.0 and 2.0, which a z cut above 2.0 splits.
    scores[:4, 2] = 3.0
    scores[4:8, 2] = 2.0
    labels[:8, 2] = True
    # One member of theme 2 is missing from the corpus.
    results = themes_quality.leave_one_theme_out(scores, labels, [4, 4, 9])
    assert [row["column"] for row in results] == [0, 1, 2]
    # Held out theme 2: chosen on themes 0 and 1.
    assert results[2]["cut"] == "z >= 2.6"
    assert results[2]["training_worst"] == 1.0
    assert results[2]["precision"] == 1.0
    assert results[2]["recall"] == 4 / 9
    # Held out theme 0: no cut fits both themes 1 and 2, so the first cut of
    # lowest precision or recall 2/3 wins, and theme 0 loses precision.
    assert results[0]["cut"] == "z >= 1.8"
    assert results[0]["precision"] == 4 / 6
    assert results[0]["recall"] == 1.0


def test_leave_one_theme_out_needs_two_themes():
    themes_quality = load_themes_quality()
    with pytest.raises(ValueError, match="2 themes or more"):
        themes_quality.leave_one_theme_out(np.zeros((5, 1)), np.zeros((5, 1)), [1])


# The real corpus and model


@pytest.fixture(scope="module")
def dev_theme_results(corpus_db_path, tmp_path_factory):
    """Precision and recall of the labelled dev themes on the embedded corpus."""
    from conftest import shared_path

    themes_quality = load_themes_quality()
    path = tmp_path_factory.mktemp("themes") / "corpus.db"
    shutil.copy(corpus_db_path, path)
    tsv = shared_path("eval", "themes-dev.tsv")
    return themes_quality.evaluate(path, tsv, embed=True)


@pytest.mark.slow
def test_dev_themes_above_floor(dev_theme_results):
    # Measured with the bundled all-MiniLM-L6-v2: precision 0.85, 0.74, 0.83
    # and recall 0.72, 0.74, 0.77. A drop below these floors is a regression.
    mean_precision = sum(t["precision"] for t in dev_theme_results) / 3
    mean_recall = sum(t["recall"] for t in dev_theme_results) / 3
    assert mean_precision >= 0.75
    assert mean_recall >= 0.7
    for theme in dev_theme_results:
        assert theme["precision"] >= 0.6, theme
        assert theme["recall"] >= 0.6, theme


@pytest.mark.slow
def test_dev_themes_reach_targets(dev_theme_results):
    # NOTE: met with little margin. Held-out checks (settings chosen on two
    # dev themes, scored on the third) miss it; see docs/benchmarks/topics.md.
    for theme in dev_theme_results:
        assert theme["precision"] >= 0.7, theme
        assert theme["recall"] >= 0.7, theme

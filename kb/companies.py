"""Short company names for feeds, derived from their URL or title.

``company_for`` turns a feed URL into the name the digest groups posts
under: netflixtechblog.com gives "Netflix", medium.com/airbnb-engineering
gives "Airbnb". Feeds listed in data/sources.opml carry their company
explicitly. This is the fallback for feeds added by URL or replayed from a
folder that the list does not name.
"""

import re
from urllib.parse import urlsplit

# Company names for hosts whose name alone does not give them, or gives a
# wrong spelling ("fb" for Meta, "atspotify" for Spotify). Keys are host
# suffixes or, for shared hosts such as medium.com, host plus first path part.
HOST_COMPANIES = {
    "allthingsdistributed.com": "Amazon",
    "aws.amazon.com": "AWS",
    "amazon.science": "Amazon",
    "engineering.atspotify.com": "Spotify",
    "bytebytego.com": "ByteByteGo",
    "brettterpstra.com": "Brett Terpstra",
    "cloudblog.withgoogle.com": "Google",
    "deeplearning.ai": "DeepLearning.AI",
    "deepmind.google": "Google DeepMind",
    "deepmind.com": "Google DeepMind",
    "fb.com": "Meta",
    "facebook.com": "Meta",
    "meta.com": "Meta",
    "github.blog": "GitHub",
    "githubengineering.com": "GitHub",
    "blog.google": "Google",
    "googleblog.com": "Google",
    "research.google": "Google",
    "hashicorp.com": "HashiCorp",
    "infoq.com": "InfoQ",
    "jvns.ca": "Julia Evans",
    "khanacademy.org": "Khan Academy",
    "netflixtechblog.com": "Netflix",
    "nvidia.com": "NVIDIA",
    "openai.com": "OpenAI",
    "oreilly.com": "O'Reilly",
    "research.swtch.com": "Russ Cox",
    "soundcloud.com": "SoundCloud",
    "medium.com/airbnb-engineering": "Airbnb",
    "medium.com/netflix-techblog": "Netflix",
}
# Hosts shared by many publishers: the host names none of them.
SHARED_HOSTS = {
    "medium.com",
    "raw.githubusercontent.com",
    "feeds.feedburner.com",
    "feedburner.com",
    "blogspot.com",
    "wordpress.com",
    "substack.com",
    "github.io",
    "typepad.com",
    "localhost",
}
SECOND_LEVEL_LABELS = {"co", "com", "org", "net", "ac", "gov", "edu"}


def company_for(url: str, title: str | None = None) -> str | None:
    """Return a short company name for a feed, such as "Netflix", or None.

    The name comes from the host (netflixtechblog.com, blog.cloudflare.com),
    from the publication of a shared host (medium.com/airbnb-engineering),
    and, for hosts that name no one (feedburner, raw GitHub files), from a
    known name in the title.
    """
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower().removeprefix("www.")
    path = [part for part in parts.path.lower().split("/") if part]
    if path and path[0] == "feed":
        path = path[1:]  # medium.com/feed/<publication>
    if host and path and f"{host}/{path[0]}" in HOST_COMPANIES:
        return HOST_COMPANIES[f"{host}/{path[0]}"]
    labels = host.split(".")
    for start in range(len(labels) - 1):
        suffix = ".".join(labels[start:])
        if suffix in HOST_COMPANIES:
            return HOST_COMPANIES[suffix]
        if suffix in SHARED_HOSTS:
            return company_from_shared_host(host, path, title)
    name = registered_name(labels)
    if not name or name in SHARED_HOSTS or re.fullmatch(r"[\d.]+", host):
        return company_from_title(title)
    return name.capitalize()


def registered_name(labels: list[str]) -> str | None:
    """Return the registered label of a host: "cloudflare" for blog.cloudflare.com."""
    labels = [label for label in labels if label]
    if len(labels) < 2:
        return labels[0] if labels else None
    if labels[-2] in SECOND_LEVEL_LABELS and len(labels[-1]) == 2 and len(labels) > 2:
        return labels[-3]  # example.co.uk
    return labels[-2]


def company_from_shared_host(
    host: str, path: list[str], title: str | None
) -> str | None:
    if host == "medium.com" and path:
        publication = re.sub(r"-(engineering|techblog|tech|blog)$", "", path[0])
        return publication.replace("-", " ").title()
    return company_from_title(title)


def company_from_title(title: str | None) -> str | None:
    """Return a known company that a title names, as "Google" in "Google AI Blog"."""
    if not title:
        return None
    known = {name.lower(): name for name in HOST_COMPANIES.values()}
    words = re.findall(r"[\w.'-]+", title.lower())
    for size in (2, 1):
        for start in range(len(words) - size + 1):
            phrase = " ".join(words[start : start + size])
            if phrase in known:
                return known[phrase]
    return None

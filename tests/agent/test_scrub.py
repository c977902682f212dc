"""Command-line scrubbing: what is masked, what is kept, and that a secret never leaves."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.scrub import DEFAULT_SCRUB_WORDS, MASK, Scrubber

M = MASK

SCRUBBED = [
    # mysql family: -pSECRET attached, --password=, --password SECRET
    ("mysql -uroot -pS3cr3t -h db1 shop", f"mysql -uroot -p{M} -h db1 shop"),
    (
        "/usr/bin/mysqldump -u backup -pS3cr3t --all-databases",
        f"/usr/bin/mysqldump -u backup -p{M} --all-databases",
    ),
    ("mariadb-dump --password=S3cr3t shop", f"mariadb-dump --password={M} shop"),
    ("mysqladmin --password S3cr3t status", f"mysqladmin --password {M} status"),
    ("MYSQL.EXE -uroot -pS3cr3t", f"MYSQL.EXE -uroot -p{M}"),
    # PostgreSQL: URL credentials, libpq connection strings, env
    (
        "psql postgresql://app:S3cr3t@db.internal:5432/shop",
        f"psql postgresql://app:{M}@db.internal:5432/shop",
    ),
    (
        "psql host=db user=app password=S3cr3t dbname=shop",
        f"psql host=db user=app password={M} dbname=shop",
    ),
    ("env PGPASSWORD=S3cr3t psql -h db -p 5432", f"env PGPASSWORD={M} psql -h db -p 5432"),
    ("pg_dump --dbname=postgres://u:p%40ss@h/db", f"pg_dump --dbname=postgres://u:{M}@h/db"),
    ("app postgres://u:p@ss@h/db", f"app postgres://u:{M}@h/db"),
    # Java system properties, camelCase keys
    (
        "java -Dpassword=S3cr3t -Djavax.net.ssl.keyStorePassword=ks1 -jar app.jar",
        f"java -Dpassword={M} -Djavax.net.ssl.keyStorePassword={M} -jar app.jar",
    ),
    # HTTP headers keep the auth scheme
    (
        "curl -H 'Authorization: Bearer eyJhbGciOi.x.y' https://api.example.com/v1",
        f"curl -H 'Authorization: Bearer {M}' https://api.example.com/v1",
    ),
    (
        "curl -H Authorization: Basic dXNlcjpwYXNz https://x",
        f"curl -H Authorization: Basic {M} https://x",
    ),
    ('curl -H "X-Api-Key: k-123" https://x', f'curl -H "X-Api-Key: {M}" https://x'),
    ("curl -u admin:S3cr3t https://x/?a=1&b=2", f"curl -u admin:{M} https://x/?a=1&b=2"),
    (
        "curl 'https://x/?a=1&b=2' --user admin:S3cr3t",
        f"curl 'https://x/?a=1&b=2' --user admin:{M}",
    ),
    # Redis
    ("redis-cli -a S3cr3t -h r1 ping", f"redis-cli -a {M} -h r1 ping"),
    ("redis-cli -u redis://:S3cr3t@r1:6379/0 ping", f"redis-cli -u redis://:{M}@r1:6379/0 ping"),
    (
        "redis-server *:6379 --requirepass S3cr3t --masterauth S3cr3t",
        f"redis-server *:6379 --requirepass {M} --masterauth {M}",
    ),
    # AWS keys in env and flags
    (
        "env AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI aws s3 ls",
        f"env AWS_ACCESS_KEY_ID={M} AWS_SECRET_ACCESS_KEY={M} aws s3 ls",
    ),
    (
        "tool --aws-secret-access-key wJalrXUtnFEMI --region eu-west-1",
        f"tool --aws-secret-access-key {M} --region eu-west-1",
    ),
    # query strings: every sensitive parameter, the others kept
    (
        "wget https://h/x?api_key=K1&page=2&token=T2",
        f"wget https://h/x?api_key={M}&page=2&token={M}",
    ),
    ("curl https://h/x?password=P1&apiKey=K2", f"curl https://h/x?password={M}&apiKey={M}"),
    (
        "curl 'https://b.s3.amazonaws.com/o?X-Amz-Signature=abc123&X-Amz-Date=1'",
        f"curl 'https://b.s3.amazonaws.com/o?X-Amz-Signature={M}&X-Amz-Date=1'",
    ),
    # tokens in URLs given to git
    (
        "git clone https://ghp_abc123@github.com/o/r.git",
        f"git clone https://{M}@github.com/o/r.git",
    ),
    (
        "git fetch https://x-access-token:ghs_abc@github.com/o/r",
        f"git fetch https://x-access-token:{M}@github.com/o/r",
    ),
    # generic flag forms
    ("app --token abc123 --verbose", f"app --token {M} --verbose"),
    ("app --token=abc123", f"app --token={M}"),
    ("app -password abc123", f"app -password {M}"),
    ("app --client-secret=a,b,c", f"app --client-secret={M}"),
    ("app --password 'my secret'", f"app --password '{M}'"),
    ("app --db_passwd hunter2 --auth-token=t1", f"app --db_passwd {M} --auth-token={M}"),
    ("app password2=hunter2", f"app password2={M}"),
    # a secret that happens to be an auth scheme word is still just the value
    ("app --password=Bearer ; echo done", f"app --password={M} ; echo done"),
    ("app --password Token next", f"app --password {M} next"),
    # env, config and Windows forms
    ("app PASSWORD:hunter2 USER:bob", f"app PASSWORD:{M} USER:bob"),
    (
        'app --config {"password": "hunter2", "user": "bob"}',
        f'app --config {{"password": "{M}", "user": "bob"}}',
    ),
    ("setup.exe /password:hunter2 /quiet", f"setup.exe /password:{M} /quiet"),
    (
        "app Server=db;Database=x;User Id=sa;Password=hunter2;Encrypt=true",
        f"app Server=db;Database=x;User Id=sa;Password={M};Encrypt=true",
    ),
    (
        "mount -t cifs -o username=bob,password=hunter2,uid=0 //srv/s /mnt",
        f"mount -t cifs -o username=bob,password={M},uid=0 //srv/s /mnt",
    ),
    ("openssl enc -aes256 -pass pass:hunter2 -in f", f"openssl enc -aes256 -pass {M} -in f"),
    # other programs with a password short flag
    ("sshpass -p hunter2 ssh backup@host", f"sshpass -p {M} ssh backup@host"),
    ("mongodump -u admin -p hunter2 --db x", f"mongodump -u admin -p {M} --db x"),
]

KEPT = [
    "ssh -p 2222 backup@host",
    "docker run -p 8080:80 nginx",
    "psql -h db -p 5432 -U app shop",
    "mysql -u root -p shop",  # -p alone prompts; "shop" is the database
    "mysql -P 3306 -h db",
    "python serve.py --tokenizer-model bert --max-tokens 512 --author bob",
    "app --password --verbose",  # a flag follows: nothing to mask
    "app --token=",
    "nginx: worker process",
    "postgres: 15/main: checkpointer",
    "ssh://git@github.com/o/r.git",
    "https://example.com:8443/path?email=a@b.c",
    "kubectl create secret generic my-secret",
    "/usr/lib/jvm/bin/java -Xmx512m -jar /opt/keycloak/lib/quarkus-run.jar",
    "",
]


@pytest.fixture(scope="module")
def scrub() -> Scrubber:
    return Scrubber()


@pytest.mark.parametrize(("command", "expected"), SCRUBBED)
def test_secret_values_are_masked(scrub, command, expected):
    assert scrub(command) == expected


@pytest.mark.parametrize("command", KEPT)
def test_commands_without_secrets_are_unchanged(scrub, command):
    assert scrub(command) == command


def test_matching_is_case_insensitive(scrub):
    assert scrub("APP --PassWord=x1 --API-KEY y2") == f"APP --PassWord={M} --API-KEY {M}"


def test_extra_words_extend_the_defaults():
    scrub = Scrubber(["license"])
    assert scrub("app --license L1 --password P1") == f"app --license {M} --password {M}"


def test_replace_defaults_keeps_only_the_given_words_and_the_fixed_rules():
    scrub = Scrubber(["license"], replace_defaults=True)
    assert scrub("app --license L1 --password P1") == f"app --license {M} --password P1"
    # URL credentials and per-program flags do not depend on the word list.
    assert scrub("mysql -pP1 postgres://u:P2@h") == f"mysql -p{M} postgres://u:{M}@h"


def test_a_word_with_separators_covers_its_spellings():
    scrub = Scrubber()
    for key in ("api_key", "api-key", "apiKey", "apikey", "API.KEY"):
        assert scrub(f"app --{key}=v1") == f"app --{key}={M}"


@pytest.mark.parametrize("word", ["", "two words", "a=b", "x" * 65, "pass\n", 7])
def test_an_invalid_word_is_a_config_error_naming_it(word):
    with pytest.raises(ConfigError) as info:
        Scrubber([word])
    assert info.value.key == "scrub_words"
    assert info.value.value == word


# --- a secret injected into any supported form never comes out -------------------------

FORMS = [
    "app --{w} {s} --next",
    "app --{w}={s}",
    "app -{w} {s}",
    "app {w}={s} x=1",
    "X_{W}={s} app",
    "app {W}:{s}",
    "app {w}: {s}",
    "curl 'https://h/p?a=1&{w}={s}&b=2'",
    "curl https://h/p?{w}={s}&b=2",
    "app -Dx.{w}={s} -jar a.jar",
    'app {{"{w}": "{s}"}}',
    "app --{w} '{s}'",
    "curl -H 'Authorization: Bearer {s}' https://h",
    "app --url scheme+x://user:{s}@host:1/db",
    "app https://{s}@github.com/o/r",
    "mysql -uroot -p{s} db",
    "redis-cli -a {s} ping",
    "curl -u user:{s} https://h",
]

_secret_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$%*+^_~.-"


@given(
    form=st.sampled_from(FORMS),
    word=st.sampled_from(DEFAULT_SCRUB_WORDS),
    upper=st.booleans(),
    secret=st.text(alphabet=_secret_chars, min_size=6, max_size=40).filter(
        lambda s: s[0].isalnum()
    ),
    prefix=st.sampled_from(["", "sudo -u app ", "/opt/bin/", "nohup "]),
    suffix=st.sampled_from(["", " --verbose", " -x 1 > /dev/null", " ; echo done"]),
)
def test_an_injected_secret_never_appears_in_the_output(form, word, upper, secret, prefix, suffix):
    word = word.upper() if upper else word
    skeleton = prefix + form.format(w=word, W=word.upper(), s="\0") + suffix
    assume(secret.lower() not in skeleton.lower())
    command = skeleton.replace("\0", secret)
    out = Scrubber()(command)
    assert secret not in out
    assert MASK in out


@given(st.text(max_size=300))
def test_scrubbing_is_idempotent_and_never_crashes(text):
    scrub = Scrubber()
    once = scrub(text)
    assert scrub(once) == once

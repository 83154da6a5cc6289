"""Label policy: names, fixed order, values for named and unnamed peers, conflicts."""

from __future__ import annotations

import pytest

from k8spacket.metrics.labels import DEFAULT_LABELS, LabelPolicy, LabelPolicyError
from test_metrics_factories import rec


@pytest.mark.parametrize(
    ("level", "opt_in", "hide", "extra"),
    [
        ("workload", (), True, ()),
        ("pod", (), True, ("src_pod", "dst_pod")),
        (
            "workload",
            ("dst_country", "src_ip", "dst_pod"),
            True,
            ("dst_pod", "src_ip", "dst_country"),
        ),
        ("workload", ("src_port",), False, ("src_port",)),
        (
            "pod",
            ("dst_ip", "src_port", "src_pod"),
            False,
            ("src_pod", "dst_pod", "dst_ip", "src_port"),
        ),
    ],
    ids=["default", "pod-level", "opt-in-order-fixed", "src-port-shown", "pod-level-plus"],
)
def test_label_names_have_a_fixed_order(
    level: str, opt_in: tuple[str, ...], hide: bool, extra: tuple[str, ...]
) -> None:
    assert LabelPolicy(level, opt_in, hide_source_port=hide).names == DEFAULT_LABELS + extra


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": "namespace"}, "level must be one of workload, pod"),
        ({"opt_in": ("src_pod", "color")}, "unknown opt-in label(s) color"),
        ({"opt_in": ("src_port",)}, "src_port label needs hideSourcePort: false"),
        ({"opt_in": ("src_port",), "hide_source_port": True}, "never a label"),
    ],
    ids=["bad-level", "unknown-label", "src-port-hidden-by-default", "src-port-hidden"],
)
def test_bad_choices_are_one_clear_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabelPolicyError) as e:
        LabelPolicy(**kwargs)  # type: ignore[arg-type]
    assert message in str(e.value)


def test_hidden_source_port_is_never_a_label_value() -> None:
    policy = LabelPolicy("pod", ("src_ip", "dst_ip", "dst_country"))
    values = policy.values(rec(src_port=54321))
    assert "src_port" not in policy.names
    assert "54321" not in values


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            rec("cart", "redis", dst_port=6379),
            ("shop", "cart", "pod", "shop", "redis", "pod", "6379"),
        ),
        (
            rec(
                "",
                "",
                src_namespace="",
                dst_namespace="",
                src_kind="",
                dst_kind="",
                dst_port=443,
            ),
            ("", "unknown", "unknown", "", "unknown", "unknown", "443"),
        ),
        (
            rec("web", "", dst_namespace="", dst_kind="external", dst_org="Telstra", dst_port=443),
            ("shop", "web", "pod", "", "Telstra", "external", "443"),
        ),
        (
            rec("web", "", dst_namespace="", dst_kind="", dst_org="Example Org"),
            ("shop", "web", "pod", "", "Example Org", "external", "6379"),
        ),
        (
            rec("web", "", dst_namespace="", dst_kind="external"),
            ("shop", "web", "pod", "", "unknown", "external", "6379"),
        ),
        (
            rec("kubelet", "api", src_namespace="", src_kind="node", dst_kind="service"),
            ("", "kubelet", "node", "shop", "api", "service", "6379"),
        ),
    ],
    ids=[
        "pods",
        "unnamed-is-unknown-not-ip",
        "external-org",
        "org-implies-external",
        "external-no-org",
        "node-to-service",
    ],
)
def test_default_values(record: object, expected: tuple[str, ...]) -> None:
    assert LabelPolicy().values(record) == expected  # type: ignore[arg-type]


def test_opt_in_values() -> None:
    policy = LabelPolicy(
        "pod",
        ("src_ip", "dst_ip", "src_port", "dst_country", "dst_service"),
        hide_source_port=False,
    )
    r = rec(
        "cart",
        "api",
        src_name="cart-7d9f4-x2x",
        dst_kind="service",
        dst_name="api",
        src_port=40001,
        dst_country="GB",
        dst_service="api-svc",
    )
    labels = dict(zip(policy.names, policy.values(r), strict=True))
    assert labels == {
        "src_namespace": "shop",
        "src_workload": "cart",
        "src_kind": "pod",
        "dst_namespace": "shop",
        "dst_workload": "api",
        "dst_kind": "service",
        "dst_port": "6379",
        "src_pod": "cart-7d9f4-x2x",
        "dst_pod": "",  # a service is not a pod
        "src_ip": "10.244.1.5",
        "dst_ip": "10.244.2.7",
        "src_port": "40001",
        "dst_country": "GB",
        "dst_service": "api-svc",
    }

"""``k8spacket demo``: a mini-cluster of network namespaces, the real agent, real traffic.

The pieces, one module each:

* :mod:`~k8spacket.demo.topology`: the cluster as data (nodes, pods, the internet
  endpoint, addresses, names) and the inventory file that names it;
* :mod:`~k8spacket.demo.netns`: builds that cluster out of network namespaces,
  veths, bridges and routes with ``ip``, and removes it (also the leftovers of a
  crashed earlier run, found by their unique prefix);
* :mod:`~k8spacket.demo.geo`: the organisation and country of the internet
  endpoint from the GeoLite2 data shipped in the ``geoip2fast`` package, written
  as a tiny MaxMind database the agent's own GeoIP layer reads;
* :mod:`~k8spacket.demo.plan` and :mod:`~k8spacket.demo.traffic`: the traffic
  plan (who calls whom, how) and the threads that carry it out inside the pods;
* :mod:`~k8spacket.demo.forward`: loopback ports on this machine that lead to the
  agents and Prometheus inside the namespaces (nothing is routed out of them);
* :mod:`~k8spacket.demo.observe`: the agents' metrics read back and summed per edge;
* :mod:`~k8spacket.demo.view`: the live terminal view (rich);
* :mod:`~k8spacket.demo.report`: the summary file and the exit picture;
* :mod:`~k8spacket.demo.runner`: puts it together (``k8spacket demo``).
"""

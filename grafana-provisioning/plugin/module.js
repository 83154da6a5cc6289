/*
 * k8spacket app plugin: carries the k8spacket dashboards (plugin.json "includes")
 * and their nav pages. No code of its own beyond registering the app, so this is
 * a hand-written AMD module that needs no build step: Grafana's loader hands it
 * @grafana/data, and it returns the plugin object Grafana expects.
 */
define(['@grafana/data'], function (grafanaData) {
  'use strict';
  var plugin = new grafanaData.AppPlugin();
  return { plugin: plugin };
});

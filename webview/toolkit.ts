// The only module that imports the component library. A move to another library (e.g.
// @vscode-elements) changes this file and the tag names in TAG.
//
// Used: button, text field, progress ring. Not used, on purpose:
// - vscode-data-grid: too slow for 2,000 tables (see webview/tableGrid.ts);
// - vscode-tag and vscode-badge: their template binds a `style` attribute, which a strict CSP
//   (no 'unsafe-inline' in style-src) blocks and reports on every page load.
import { provideVSCodeDesignSystem, vsCodeButton, vsCodeProgressRing, vsCodeTextField } from '@vscode/webview-ui-toolkit';

/** Tag names of the components the panel creates. */
export const TAG = {
  button: 'vscode-button',
  textField: 'vscode-text-field',
  progressRing: 'vscode-progress-ring',
} as const;

let registered = false;

/** Defines the custom elements; call once before creating any of them. */
export function registerToolkit(): void {
  if (registered) return;
  registered = true;
  provideVSCodeDesignSystem().register(vsCodeButton(), vsCodeTextField(), vsCodeProgressRing());
}

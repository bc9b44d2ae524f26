/* jsonedit.ts: edits of .vscode/tasks.json and launch.json that keep what the
 * user wrote: comments, trailing commas, the order and formatting of other
 * entries. Built on jsonc-parser's modify/applyEdits (minimal text edits), never
 * on parse + stringify. No vscode import. */
import { applyEdits, findNodeAtLocation, modify, parse, parseTree, type Node, type ParseError } from 'jsonc-parser';

const FMT = { formattingOptions: { insertSpaces: true, tabSize: 2, eol: '\n' } };

export class JsoncError extends Error {}

function check(text: string, file: string): void {
  const errors: ParseError[] = [];
  parse(text, errors, { allowTrailingComma: true, disallowComments: false });
  if (errors.length > 0)
    throw new JsoncError(`${file} is not valid JSON with comments (error at offset ${errors[0].offset}); fix it first, kbridge will not overwrite it`);
}

function arrayItems(text: string, path: (string | number)[]): Node[] {
  const root = parseTree(text);
  const n = root ? findNodeAtLocation(root, path) : undefined;
  return n && n.type === 'array' && n.children ? n.children : [];
}

function memberValue(item: Node, key: string): unknown {
  const p = findNodeAtLocation(item, [key]);
  return p ? p.value : undefined;
}

/* Add task (which has a "label") to tasks.json text, or replace the task with
 * the same label. Empty text starts a new file. */
export function upsertTask(text: string, task: Record<string, unknown>): string {
  if (text.trim() === '') text = '{\n  "version": "2.0.0",\n  "tasks": []\n}\n';
  check(text, 'tasks.json');
  const items = arrayItems(text, ['tasks']);
  const i = items.findIndex((n) => memberValue(n, 'label') === task['label']);
  if (!findNodeAtLocation(parseTree(text)!, ['version'])) text = applyEdits(text, modify(text, ['version'], '2.0.0', FMT));
  const path = i >= 0 ? ['tasks', i] : ['tasks', -1];
  const edits = modify(text, path, task, { ...FMT, isArrayInsertion: i < 0 });
  return applyEdits(text, edits);
}

export interface LaunchConfigSummary {
  index: number;
  name: string;
  type: string;
  request: string;
  preLaunchTask?: string;
}

export function listLaunchConfigs(text: string): LaunchConfigSummary[] {
  if (text.trim() === '') return [];
  check(text, 'launch.json');
  return arrayItems(text, ['configurations']).map((n, index) => ({
    index,
    name: String(memberValue(n, 'name') ?? ''),
    type: String(memberValue(n, 'type') ?? ''),
    request: String(memberValue(n, 'request') ?? ''),
    preLaunchTask: typeof memberValue(n, 'preLaunchTask') === 'string' ? (memberValue(n, 'preLaunchTask') as string) : undefined,
  }));
}

/* Append a launch configuration (replacing one of the same name). */
export function upsertLaunchConfig(text: string, config: Record<string, unknown>): string {
  if (text.trim() === '') text = '{\n  "version": "0.2.0",\n  "configurations": []\n}\n';
  check(text, 'launch.json');
  const i = listLaunchConfigs(text).findIndex((c) => c.name === config['name']);
  return applyEdits(text, modify(text, ['configurations', i >= 0 ? i : -1], config, { ...FMT, isArrayInsertion: i < 0 }));
}

/* Make launch configuration `name` run task `label` first and read envFile.
 * Throws if there is no such configuration. */
export function linkLaunchConfig(text: string, name: string, label: string, envFile?: string): string {
  const i = listLaunchConfigs(text).findIndex((c) => c.name === name);
  if (i < 0) throw new JsoncError(`launch.json has no configuration named "${name}"`);
  let out = applyEdits(text, modify(text, ['configurations', i, 'preLaunchTask'], label, FMT));
  if (envFile !== undefined) out = applyEdits(out, modify(out, ['configurations', i, 'envFile'], envFile, FMT));
  return out;
}

/* The kbridge tasks of a tasks.json text (for the tree view and the menu). */
export function kbridgeTasks(text: string): Record<string, unknown>[] {
  if (text.trim() === '') return [];
  try {
    check(text, 'tasks.json');
  } catch {
    return [];
  }
  const v = parse(text, [], { allowTrailingComma: true }) as { tasks?: unknown };
  return Array.isArray(v?.tasks) ? v.tasks.filter((t): t is Record<string, unknown> => typeof t === 'object' && t !== null && (t as Record<string, unknown>)['type'] === 'kbridge') : [];
}

import { Column, CreateDateColumn, Entity, PrimaryColumn, PrimaryGeneratedColumn } from 'typeorm';
import { numberTransformer } from './transformers';

@Entity('templates')
export class Template {
  @PrimaryGeneratedColumn('uuid') id: string;
  @Column('text', { unique: true }) name: string;
  /** `builtin:busybox` or the URL/path of the imported rootfs tarball. */
  @Column('text') source: string;
  @Column('bigint', { name: 'size_bytes', transformer: numberTransformer }) sizeBytes: number;
  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' }) createdAt: Date;
}

export type TemplateReplicaState = 'importing' | 'ready' | 'failed';

/** A template is usable on a host once its replica there is `ready`. */
@Entity('template_replicas')
export class TemplateReplica {
  @PrimaryColumn('uuid', { name: 'template_id' }) templateId: string;
  @PrimaryColumn('uuid', { name: 'host_id' }) hostId: string;
  @Column('text') state: TemplateReplicaState;
  @Column('text', { name: 'storage_driver', nullable: true }) storageDriver: string | null;
  @Column('timestamptz', { name: 'updated_at' }) updatedAt: Date;
}
